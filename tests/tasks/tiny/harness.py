"""Task-owned: load the recipe's predict() and the trained slope; predict x values from stdin."""

import json
import sys

sys.path.insert(0, ".")
import train  # the recipe module, from the workspace (cwd)

model = json.load(open(sys.argv[1]))
xs = json.load(sys.stdin)
json.dump(train.predict(model["w"], xs), sys.stdout)
