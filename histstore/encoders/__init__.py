"""Tile encoders: ResNet backbones, projection heads, AdCo / SimCLR pretraining (pure torch).

HistCode (arXiv 2204.11994) pretrains a ResNet tile encoder with AdCo (Hu et al., CVPR 2021)
and embeds every tile with the frozen backbone. One concept per module:

- `backbones`  : ResNet-18 / ResNet-50 / ResNet-50 cut after layer3, local weights only
- `heads`      : projection MLP with L2-normalised output
- `momentum`   : EMA update of the key encoder
- `bank`       : AdCo's adversarial negative bank and its closed-form ascent step
- `losses`     : AdCo encoder loss, NT-Xent (SimCLR)
- `augment`    : batched MoCo-v2 + histology augmentations on tensors
- `contrastive` : what AdCo and SimCLR share (settings checks, the optimiser step)
- `adco`, `simclr` : the models with their `training_step`
- `methods`    : the method registry (name -> model class, config class)
- `schedule`, `checkpoint`, `trainer` : cosine schedule, weights_only checkpoints, the loop

`backbones` is the leaf: it imports nothing else from this package. Device and autocast
helpers are `histstore.devices`.

Submodules are imported explicitly (`from histstore.encoders.adco import AdCo`); this package
imports nothing so that importing it stays cheap.
"""
