"""The fuzz harness: random cases against every entry point, each run in a worker
process (runner.py), judged by an oracle per case (oracle.py). How to run it and how to
plug a family in: docs/fuzzing.md."""
