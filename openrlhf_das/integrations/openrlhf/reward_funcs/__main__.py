"""``python -m openrlhf_das.integrations.openrlhf.reward_funcs {math|code}``: print the file path
to pass as ``--reward.remote_url``."""

import sys

from . import PATHS

if len(sys.argv) != 2 or sys.argv[1] not in PATHS:
    sys.exit(f"usage: python -m openrlhf_das.integrations.openrlhf.reward_funcs {{{'|'.join(PATHS)}}}")
print(PATHS[sys.argv[1]])
