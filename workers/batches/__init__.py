"""The worker side of batches (the Batch API): feeding their lines into the batch streams,
ending each line once (`lines`, written by the finish script), ending the batch.

    Feeder      one per worker process: lifecycle steps and feeding (feeder.py)
    Finalizer   the output and error files, the last status (finalizer.py)
    batch_open  whether a picked-up line may start; ends one that may not (gate.py)
"""

from workers.batches.feeder import Feeder
from workers.batches.finalizer import Finalizer
from workers.batches.gate import batch_open, line_gate

__all__ = ["Feeder", "Finalizer", "batch_open", "line_gate"]
