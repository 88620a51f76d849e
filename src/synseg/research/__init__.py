"""The research harness: experiments and measurements built on the library (the synthetic-world table, speed). It
imports the library, never the command line; the commands `synseg world`, `demo` and `bench` call into it."""
