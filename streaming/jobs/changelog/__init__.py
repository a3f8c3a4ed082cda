"""The state changelog -> training data (a confidence CSR and the gate's held-out cases), in arrays.

The retrain reads every user's latest state record from the state table's changelog (compacted,
but possibly holding several records of a user that compaction has not merged yet) and needs the
users x items confidence matrix. No per-user Python object is built on the way. The data flows
through the modules in this order:

  fetch.py   the consumers (librdkafka in bulk; aiokafka), progress and stall limit
  child.py   the same consumers in a forked reader process, chunks handed over a pipe
  table.py   the latest record per key, the gate's held-out users, the matrix at the end
  codec.py   records -> arrays: the state codec walked with numpy, many records at once
  read.py    the entry points: read_training_data (the retrain), read_profiles (tools, tests)
"""

from streaming.jobs.changelog.fetch import EmptyChangelog
from streaming.jobs.changelog.read import read_profiles, read_training_data

__all__ = ["EmptyChangelog", "read_profiles", "read_training_data"]
