"""`histstore pretrain`."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import RegistryChoice, backbone_names, pass_store, pretrain_method_names


@click.command()
@click.option("--cohort", required=True, help="Train on this cohort's tiles.")
@click.option("--method", type=RegistryChoice(pretrain_method_names), default="adco", show_default=True)
@click.option("--arch", type=RegistryChoice(backbone_names), default="resnet18",
              show_default=True, help="resnet50-layer3 is HistCode's 1024-d backbone.")
@click.option("--steps", type=int, help="Optimisation steps (or --epochs).")
@click.option("--epochs", type=float, help="Passes over the cohort's tiles (or --steps).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="The global batch (split evenly over --nproc-per-node processes).")
@click.option("--bank-size", type=int, help="AdCo negatives [default: a fifth of the tiles, as HistCode; made "
              "smaller only when it would not fit in memory, with a note, recorded in the run].")
@click.option("--lr", type=float, default=0.03, show_default=True, help="SGD learning rate (cosine schedule).")
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option("--t", "temp", type=float, default=0.12, show_default=True, help="AdCo encoder temperature (paper).")
@click.option("--t-mem", type=float, default=0.02, show_default=True, help="AdCo bank temperature (paper).")
@click.option("--lr-mem", type=float, default=0.3, show_default=True, help="AdCo bank learning rate (HistCode).")
@click.option("--temperature", type=float, default=0.2, show_default=True, help="SimCLR temperature.")
@click.option("--symmetric", is_flag=True, help="Symmetric AdCo loss over both views.")
@click.option("--bn-splits", type=int, help="AdCo shuffle-BN: BatchNorm groups of the global batch, a "
              "multiple of the processes [default: 8, fewer for batches under 16].")
@click.option("--in-batch-negatives", is_flag=True, help="AdCo: also contrast with the batch's other keys "
              "(the official code's loss; the paper's has the bank's negatives only).")
@click.option("--stain-norm", type=click.Choice(["none", "macenko"]), default="none", show_default=True)
@click.option("--tiling", help="Tiling settings key when slides have several.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Initialise the backbone from a local weights file (e.g. ImageNet).")
@click.option("--device", default="auto", show_default=True)
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, help="Tile-reading worker processes.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--name", help="Encoder name [default: <method>-<arch>-run<id>].")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished run with this cohort, method and arch.")
@click.option("--nproc-per-node", type=int, help="Data-parallel worker processes to start on this machine "
              "(one per GPU, NCCL; or CPU shares, gloo). Several machines: start `torchrun ... -m histstore "
              "pretrain ...` on each instead.")
@pass_store
def pretrain(store, cohort, method, arch, steps, epochs, batch_size, bank_size, lr, warmup_steps, temp, t_mem,
             lr_mem, temperature, symmetric, bn_splits, in_batch_negatives, stain_norm, tiling, weights, device, amp,
             seed, workers, checkpoint_every, log_every, name, resume, nproc_per_node):
    """Pretrain a tile encoder without labels (AdCo; SimCLR for comparison) and register it."""
    from histstore.pretrain import PretrainSettings, pretrain as run_pretrain

    s = PretrainSettings(cohort=cohort, method=method, arch=arch, steps=steps, epochs=epochs,
                         batch_size=batch_size, bank_size=bank_size, lr=lr, warmup_steps=warmup_steps, t=temp,
                         t_mem=t_mem, lr_mem=lr_mem, temperature=temperature, symmetric=symmetric,
                         bn_splits=bn_splits, in_batch_negatives=in_batch_negatives, stain_norm=stain_norm,
                         tiling=tiling, weights=str(weights) if weights else None,
                         device=device, amp=amp, seed=seed, workers=workers, checkpoint_every=checkpoint_every,
                         log_every=log_every, name=name, nproc_per_node=nproc_per_node)
    r = run_pretrain(store, s, resume=resume)
    if r is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    last = r.history[-1] if r.history else {}
    click.echo(f"encoder {r.encoder} (run {r.run_id}): {r.steps} steps"
               + (f" (resumed at {r.resumed_from})" if r.resumed_from else "")
               + (f", final loss {last['loss']:.3f}, contrastive acc {last.get('contrastive_acc', float('nan')):.2f}"
                  if last else "")
               + f", {r.img_per_s:.1f} img/s" + (f" on {r.world_size} processes" if r.world_size > 1 else "")
               + f", {r.seconds:.0f} s")
