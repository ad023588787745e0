"""Train a decoder that reconstructs sentences from their BERT vectors, then evaluate it.

CPU, the embedded default (all-MiniLM-L6-v2 [CLS], Wikipedia summaries):
    python train.py
One GPU, a bigger decoder (bf16 autocast, fused AdamW; --compile for torch.compile):
    python train.py --device cuda --d-model 512 --n-layer 8 --n-head 8 --dropout 0.1 --batch-size 256 --max-steps 20000 --compile
Data-parallel on 8 GPUs (DDP over NCCL; --batch-size is the global batch, split over the processes):
    torchrun --standalone --nproc_per_node 8 train.py --device cuda --d-model 512 --n-layer 8 --n-head 8 --dropout 0.1 --batch-size 2048
The same on CPU processes (gloo), e.g. to check a set-up:
    torchrun --standalone --nproc_per_node 2 train.py --device cpu --max-steps 50
Flags can also come from a file:
    python train.py my_run.yaml
Continue an interrupted run (same flags; Ctrl-C or SIGTERM saves a checkpoint before exiting):
    python train.py --run-name big --resume
`python train.py --help` lists every flag.
"""

import sys

from recon import distributed
from recon.config import TrainConfig, parse
from recon.device import keep_freed_memory
from recon.errors import ReconError, print_error
from recon.progress import quiet_libraries
from recon.training import TrainingInterrupted, train


def main(argv=None):
    quiet_libraries()
    keep_freed_memory()
    try:
        train(parse(TrainConfig, argv))
    except ReconError as e:
        print_error(e)
        return 2
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum  # the shell's convention for "ended by a signal"
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
