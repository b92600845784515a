"""Reporting's evidence store (Art. 12-14 records): encrypted, content-addressed
evidence attached to incidents, preserved for a configurable period and under
holds, readable by regulators in scope and operators, every change and read
in the audit ledger.

- `crypto`   the at-rest format: segmented AES-256-GCM per object, data keys
             wrapped by rotating key-encryption keys
- `blobs`    where ciphertext lives: a small interface and its filesystem
             implementation (object storage is another implementation)
- `domain`   evidence, holds, the derived preservation state
- `service`  the use cases: attach, get, read, hold, lift, release
- `store`    evidence rows, attachments and holds in PostgreSQL
- `server`   the gRPC servicer (proto ⇄ domain only)
"""
