import os

import torch

# Two cores: keep torch from oversubscribing when tests spawn helpers.
torch.set_num_threads(min(2, os.cpu_count() or 1))
