"""Deliveries of reports to the authorities: what each is about, its attempts, its
replays, and what delivering does to the incident's status (DeliveryService)."""
