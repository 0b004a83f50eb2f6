"""Child process of the peak-memory case: one variant per fresh process, JSON on stdout."""

import json
import sys

from .cases import peak_memory_child

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(peak_memory_child(**spec)))
