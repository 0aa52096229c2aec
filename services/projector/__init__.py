"""projector: folds ``tracking.events`` into the Postgres read model; ``api/`` serves it."""
