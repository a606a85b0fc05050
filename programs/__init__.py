"""Programs for the lpemu machine: the command line, reports, and (later) the compiler."""
