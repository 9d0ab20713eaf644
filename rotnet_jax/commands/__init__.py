"""The doors in: every command-line entry point and the notebooks' setup.

A command parses its flags, calls one library function and turns bad
input into one ``error:`` line and an exit status (``cli.py``). Nothing in
the library imports from here.
"""
