"""Federated learning with secure multiparty averaging (PySyft 0.2.9): the tutorial as a script.

python federated_learning_smpc.py --help
"""

import sys

from fl_smpc.cli import main

if __name__ == "__main__":
    sys.exit(main())
