"""One module per CLI subcommand: configure(parser) adds its arguments, run(args) does the work."""
