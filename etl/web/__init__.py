"""The read-only web dashboard (`etl serve`): pages and a JSON API over the store's views."""
