"""The `alkn` command (alkn_cli.main): serve, worker, keys, tenants, migrate, gc, finetune,
demo, bench, and the client commands (submit, status, download, models, versions)."""
