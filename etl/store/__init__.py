"""Everything that knows SQL: the contract's schema, the engine (or embedded server), loading."""
