import sys

from watcher.cli.app import main

# The guard matters: a sync flow's process (spawned) imports the parent's main module.
if __name__ == "__main__":
    sys.exit(main())
