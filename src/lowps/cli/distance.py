"""``lowps distance``, ``lowps dirs`` and ``lowps allpairs``: the metric on image files."""
from __future__ import annotations

import argparse
import sys

from ._common import add_batch_options, add_metric_options, metric_config, num, report_skip, write_rows


def _cmd_distance(a: argparse.Namespace) -> int:
    from ..functional import distance

    d = distance(a.img0, a.img1, config=metric_config(a), per_layer=a.per_layer)
    if a.per_layer:
        total, per = d
        print(num(total[0]))
        for name, v in per.items():
            print(f"  {name}: {num(v[0])}")
    else:
        print(num(d[0]))
    return 0


def _cmd_dirs(a: argparse.Namespace) -> int:
    from ..folders import distance_folders
    from ..functional import get_metric

    def unpaired(names: list[str]) -> None:
        print(f"lowps dirs: {len(names)} files have no partner and are skipped (e.g. {names[:3]})", file=sys.stderr)

    m = get_metric(config=metric_config(a), device=a.device)
    res = distance_folders(a.dir0, a.dir1, m, batch_size=a.batch_size, skip_bad=a.skip_bad, progress=not a.quiet,
                           on_unpaired=unpaired, on_skip=report_skip("lowps"))
    if res.skipped:
        print(f"lowps dirs: {len(res.skipped)} unreadable image(s) skipped", file=sys.stderr)
    write_rows(a.out, ["file", "distance"], [[name, d] for name, d in res.rows])
    return 0


def _cmd_allpairs(a: argparse.Namespace) -> int:
    from ..allpairs import pairwise
    from ..folders import images_in, readable_images
    from ..functional import get_metric

    files = images_in(a.dir)
    other = images_in(a.other) if a.other else None
    if not files or (other is not None and not other):
        raise ValueError("no images found")
    bad: list[str] = []
    files = readable_images(files, a.skip_bad, bad, on_skip=report_skip("lowps"))
    if other is not None:
        other = readable_images(other, a.skip_bad, bad, on_skip=report_skip("lowps"))
    if not files or (other is not None and not other):
        raise ValueError("no readable images left")
    m = get_metric(config=metric_config(a), device=a.device)
    mat = pairwise(files, other, metric=m, batch_size=a.batch_size, progress=not a.quiet)
    cols = [f.name for f in (other or files)]
    rows = [[f.name] + [float(v) for v in row] for f, row in zip(files, mat)]
    write_rows(a.out, ["file"] + cols, rows,
               as_json={"rows": [f.name for f in files], "cols": cols, "distances": mat.tolist(), "skipped": bad})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("distance", help="distance between two image files")
    d.add_argument("img0", help="first image file")
    d.add_argument("img1", help="second image file (same size)")
    add_metric_options(d)
    d.add_argument("--per-layer", action="store_true", help="also print each layer's distance")
    d.set_defaults(func=_cmd_distance)

    dd = sub.add_parser("dirs", help="distances between same-named images in two directories")
    dd.add_argument("dir0", help="first folder (e.g. references)")
    dd.add_argument("dir1", help="second folder (e.g. generated images with the same names)")
    add_batch_options(dd, 32)
    dd.set_defaults(func=_cmd_dirs)

    ap = sub.add_parser("allpairs", help="N x N (or N x M with --other) distance matrix of a directory's images")
    ap.add_argument("dir", help="folder of images (rows, and columns unless --other)")
    ap.add_argument("--other", default=None, help="a second directory: rows from DIR, columns from OTHER")
    add_batch_options(ap, 64)
    ap.set_defaults(func=_cmd_allpairs)
