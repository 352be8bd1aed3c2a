"""One module per `lmscale` subcommand; each is a thin call into the library."""
