"""Incidents (Art. 12): what providers and avgate's services report, routed to
the departments that receive them, acknowledged by regulators in scope.

- `domain`   incidents, their inputs, routing rules and listing queries
- `service`  the use cases: create (one or a batch), get, list, acknowledge
- `store`    a small interface, its SQL implementation and an in-memory fake;
             statuses set after delivery (`set_incident_status`)
- `wire`     proto ⇄ domain for incidents and their filters (also the feed's)
- `server`   the gRPC servicer (proto ⇄ domain only)
"""
