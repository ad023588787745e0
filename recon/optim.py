"""--optimizer muon: Muon (Jordan et al. 2024; torch.optim.Muon) on the hidden matrices of the
decoder's blocks, AdamW on everything else (embeddings, the vector's projections, the bag-of-words
head, norms, biases, a trained encoder), as modded-nanoGPT and nanochat split them.

Muon's update is the momentum orthogonalised by Newton-Schulz iterations; its rate is scaled to match
AdamW's update size (Moonshot's `match_rms_adamw`, Liu et al. 2025), so --lr and --weight-decay mean what
they mean for AdamW and the learning-rate schedule moves both halves alike.
"""

import torch

OPTIMIZERS = ("adamw", "muon")


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two: torch's Muon for `muon_groups`, torch's AdamW for `adamw_groups`.

    Its param_groups are the two optimizers' own group dicts (Muon's first), so an LR scheduler
    that sets a group's "lr" sets it where the step reads it; its state_dict holds both."""

    def __init__(self, muon_groups, adamw_groups, betas=(0.9, 0.95), momentum=0.95, fused=False):
        self.muon = torch.optim.Muon(muon_groups, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, betas=betas, fused=fused)
        super().__init__([{"params": []}], {})  # the base class wants a group; replaced by the two optimizers'
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("this optimizer state is not --optimizer muon's (two halves, muon and adamw): "
                             "resume the run with the optimizer it was trained with")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def make_muon(groups, hidden, betas=(0.9, 0.95), fused=False, adamw_lr_scale=1.0):
    """Split AdamW-style parameter groups (dicts with "params", "lr", "weight_decay") into the matrices
    in `hidden` (for Muon, each keeping its group's lr and weight decay) and the rest (for AdamW, at
    adamw_lr_scale times its group's lr: --adamw-lr-scale)."""
    hidden = {id(p) for p in hidden}
    muon, adamw = [], []
    for group in groups:
        for chosen, parts in ((True, muon), (False, adamw)):
            params = [p for p in group["params"] if (id(p) in hidden) == chosen]
            if params:
                parts.append({**group, "params": params})
                if not chosen and adamw_lr_scale != 1.0:
                    parts[-1]["lr"] = group["lr"] * adamw_lr_scale
    if not muon:
        raise ValueError("--optimizer muon found no hidden matrices in this decoder to give Muon")
    return MuonAdamW(muon, adamw, betas=betas, fused=fused)
