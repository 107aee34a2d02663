"""`histstore ingest` and `histstore synth`."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import pass_store
from histstore.cluster import CLUSTER_HELP


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--cohort", help="Add the slides to this cohort (created if new).")
@click.option("--mpp", type=float, help="Target resolution in um/px [default: 0.5, i.e. 20x].")
@click.option("--magnification", type=float, help="Target magnification instead of --mpp (20 -> 0.5 um/px).")
@click.option("--tile-size", type=int, default=128, show_default=True, help="Tile side in pixels at the target resolution.")
@click.option("--overlap", type=int, default=0, show_default=True, help="Overlap between tiles in target pixels.")
@click.option("--tile-rule", type=click.Choice(["clam-four-pt", "min-tissue"]), default="clam-four-pt",
              show_default=True,
              help="Which tiles to keep: clam-four-pt = HistCode's (CLAM's) rule, a tile whose central region "
                   "touches a tissue contour; min-tissue = a tile with at least --min-tissue tissue.")
@click.option("--min-tissue", type=float,
              help="With --tile-rule min-tissue: drop tiles with less tissue than this fraction [default: 0.5].")
@click.option("--assume-mpp", type=float, help="Level-0 um/px for slides whose file does not say (never guessed).")
@click.option("--workers", type=int, help="Worker processes (--cluster none, local) or jobs (slurm, pbs) "
              "[default: min(4, CPUs)].")
@click.option("--cluster", default="none", show_default=True, help=CLUSTER_HELP)
@click.option("--case-id", "case_id_mode", type=click.Choice(["slide"]),
              help="'slide': a slide with no case id (manifest case_id, sample sheet Case ID) and no "
                   "TCGA barcode is its own case. Without it such slides are refused: with made-up "
                   "case ids two slides of one patient can land in train and test of one fold.")
@pass_store
def ingest(store, source, cohort, mpp, magnification, tile_size, overlap, tile_rule, min_tissue, assume_mpp,
           workers, cluster, case_id_mode):
    """Catalogue slides and tile them on tissue.

    SOURCE is a folder of slides, a CSV manifest (path[,slide_id,case_id]) or a GDC sample
    sheet (TSV with File Name, Case ID, Sample ID, Sample Type). Case ids come from the
    manifest or sheet, else from TCGA barcodes, else --case-id slide. Re-running ingests
    nothing twice.
    """
    from histstore.ingest import ingest as run_ingest
    from histstore.wsi.tiling import TilingSpec, magnification_to_mpp

    if mpp is not None and magnification is not None:
        raise click.UsageError("give --mpp or --magnification, not both")
    target = magnification_to_mpp(magnification) if magnification is not None else (mpp or 0.5)
    if min_tissue is not None and tile_rule != "min-tissue":
        raise click.UsageError("--min-tissue goes with --tile-rule min-tissue")
    spec = TilingSpec(target_mpp=target, tile_size=tile_size, overlap=overlap, min_tissue=min_tissue,
                      tile_rule=tile_rule)
    report = run_ingest(store, source, spec, cohort=cohort, assume_mpp=assume_mpp, workers=workers,
                        case_id_mode=case_id_mode, cluster=cluster)
    for o in report.outcomes:
        if o.status in ("failed", "changed"):
            click.echo(f"{o.status}: {o.slide_id}: {o.message}", err=True)
    click.echo(f"tiling {report.tiling_key} ({spec.label}, {spec.rule_label}): "
               f"{report.count('ingested')} ingested ({report.n_tiles:,} tiles), "
               f"{report.count('skipped')} already present, {report.count('failed')} failed, "
               f"{report.count('changed')} changed" + (f"; cohort {cohort}" if cohort else ""))
    if not report.ok:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--slides", "n_slides", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=2048, show_default=True, help="Slide side in level-0 pixels.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Level-0 um/px.")
@click.option("--witness-rate", default="0.1-0.5", show_default=True,
              help="Fraction of a tumour slide's tissue that is tumour: a value (every tumour slide "
                   "alike, e.g. 0.01 for a few tumour tiles among hundreds) or LOW-HIGH (drawn per case).")
@click.option("--contrast", type=float, default=1.0, show_default=True,
              help="How different tumour looks, 0 (drawn as stroma: no signal) to 1 (large, dense, dark, "
                   "irregular nuclei, little eosin).")
@click.option("--sites", type=int, default=1, show_default=True,
              help="Tissue source sites: cases are spread over them, each with its own stain vectors, "
                   "stain intensities and scanner blur (1: the reference stain, no blur).")
@click.option("--stain-variation", type=float, default=1.0, show_default=True,
              help="How much sites differ (0: not at all; 1: visible shifts of hue, intensity and sharpness; up to 3).")
@click.option("--slides-per-case", default="2", show_default=True,
              help="Slides per case: a number (alternating tumour, normal, tumour, ...) or LOW-HIGH "
                   "(drawn per case, starting with tumour or normal at random).")
@click.option("--gene-regions", is_flag=True,
              help="Tie each gene's fold change to a subregion of the tumour with that gene's own "
                   "morphology (default: fold changes follow the case's tumour burden).")
@click.option("--separate-gene-regions", is_flag=True,
              help="With --gene-regions: place each gene's subregion where no other gene's is, so different "
                   "genes' signals sit in different parts of the tumour (default: placed independently, "
                   "they may overlap).")
def synth(out_dir, n_slides, seed, size, mpp, witness_rate, contrast, sites, stain_variation, slides_per_case,
          gene_regions, separate_gene_regions):
    """Write a synthetic H&E-like cohort (pyramidal TIFFs, manifest, labels, sites, fold changes).

    The difficulty settings and the ground truth (planted tumour regions, gene subregions,
    sites, per-case witness rates) go to truth.json. docs/synthetic.md describes the model.
    """
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.synth.difficulty import parse_range

    cohort = synth_cohort(out_dir, n_slides=n_slides, seed=seed, size=(size, size), mpp=mpp,
                          slides_per_case=parse_range(slides_per_case, int, "--slides-per-case"),
                          witness_rate=parse_range(witness_rate, float, "--witness-rate"),
                          contrast=contrast, sites=sites, stain_variation=stain_variation,
                          gene_regions=gene_regions, separate_genes=separate_gene_regions)
    n_tumour = sum(s.tumor for s in cohort.slides)
    click.echo(f"wrote {n_slides} synthetic slides ({n_tumour} tumour, {len(cohort.case_burden)} cases, "
               f"{sites} site{'s' if sites > 1 else ''}) to {out_dir} (manifest: {cohort.manifest}, "
               f"labels: {cohort.labels}, sites: {cohort.sites}, fold changes: {cohort.foldchanges}, "
               f"truth: {cohort.truth_path})")
