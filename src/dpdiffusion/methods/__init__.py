"""Training methods: each says how a per-example loss is formed and what is trained."""
