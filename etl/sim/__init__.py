"""Venue simulators: small ASGI apps that speak each venue's documented API.

They check signatures like the venue would, serve balances that move a little on every
call, and take injected faults (`Simulator.fail_next`, or `POST /_sim/faults` from
another process) so tests can exercise every failure over real HTTP semantics.
"""
