"""The ``facepoints`` commands for any photo: ``photo`` and ``measure-framing`` (registered
by ``cli.build_parser``), and the table ``facepoints photo`` writes (``photo_rows``,
``write_photo_csv``)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from ..core.gt_csv import GT_HEADER
from ..core.schema import SKELETON

PHOTO_HEADER = ["filename", "face", "box_x0", "box_y0", "box_x1", "box_y1", "confidence", *GT_HEADER[1:]]
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def photo_rows(name: str, faces) -> list[list[str]]:
    """The CSV rows of one photo's faces (``photo.PhotoFace``), numbered from 0."""
    rows = []
    for i, face in enumerate(faces):
        conf = "" if face.confidence is None else f"{face.confidence:.3f}"
        rows.append([name, str(i), *(f"{v:.2f}" for v in face.box), conf,
                     *(f"{v:.2f}" for v in face.points.reshape(-1))])
    return rows


def write_photo_csv(rows: list[list[str]], out) -> None:
    """Write the header and ``rows`` to ``out`` (a path, or ``-`` for stdout)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PHOTO_HEADER)
    writer.writerows(rows)
    if str(out) == "-":
        sys.stdout.write(text.getvalue())
    else:
        Path(out).write_text(text.getvalue(), encoding="utf-8")


def draw_faces(photo: Image.Image, faces) -> Image.Image:
    """A copy of ``photo`` with each face's box, points and skeleton drawn."""
    out = photo.copy()
    pen = ImageDraw.Draw(out)
    width = max(1, round(max(photo.size) / 400))
    for face in faces:
        pen.rectangle(face.box, outline=(0, 200, 255), width=width)
        pts = [tuple(p) for p in face.points]
        for a, b in SKELETON:
            pen.line([pts[a], pts[b]], fill=(255, 255, 255), width=width)
        r = 1.5 * width
        for x, y in pts:
            pen.ellipse((x - r, y - r, x + r, y + r), fill=(255, 60, 60))
    return out


def _photo_paths(target: Path) -> list[Path]:
    if target.is_dir():
        paths = sorted(p for p in target.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
        if not paths:
            raise ValueError(f"{target} holds no pictures ({', '.join(sorted(PHOTO_SUFFIXES))})")
        return paths
    if not target.is_file():
        raise FileNotFoundError(f"no picture or folder {target}")
    return [target]


def _cmd_photo(args: argparse.Namespace) -> int:
    from ..core.checkpoint import default_model_path, load_model
    from ..core.progress import TextProgress
    from .photo import INSTALL_HINT, Framing, _detector, faces_in_photo, read_photo

    paths = _photo_paths(Path(args.pictures))
    try:
        detector = _detector()
    except ImportError:
        print(f"facepoints photo: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    model = load_model(args.model or default_model_path())
    framing = Framing.load()
    if args.draw:
        Path(args.draw).mkdir(parents=True, exist_ok=True)
    rows, empty = [], []
    bar = TextProgress(total=len(paths), desc="photo", unit="photo") if len(paths) > 1 else None
    for path in paths:
        photo = read_photo(path)
        faces = faces_in_photo(photo, model, framing=framing, detector=detector, threads=args.threads)
        rows += photo_rows(path.name, faces)
        if not faces:
            empty.append(path.name)
        if args.draw:
            draw_faces(photo, faces).save(Path(args.draw) / f"{path.stem}.jpg", quality=90)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    write_photo_csv(rows, args.out)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"warning: no face found in {len(empty)} of {len(paths)} picture{'s' if len(paths) != 1 else ''}: {shown}",
              file=sys.stderr)
    if str(args.out) != "-":
        print(f"wrote {len(rows)} face{'s' if len(rows) != 1 else ''} from {len(paths)} "
              f"picture{'s' if len(paths) != 1 else ''} to {args.out}")
    return 0


def _cmd_measure_framing(args: argparse.Namespace) -> int:
    from ..core.progress import TextProgress
    from .machine import RESULTS_DIR, machine_info, shown_command, write_result
    from .photo import INSTALL_HINT
    from .photo_framing import measure_course_framing

    data = Path(args.data_dir)
    try:
        result = measure_course_framing(data / "gt.csv", data / "images", faces=args.faces, seed=args.seed,
                                        progress=TextProgress)
    except ImportError:
        print(f"facepoints measure-framing: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    result = {"name": args.name, "command": shown_command(), "machine": machine_info(), **result}
    out = write_result(result, RESULTS_DIR, args.name)
    f = result["framing"]
    print(f"finder found a face in {result['finder_recall']:.1%} of {result['faces']} course crops; crop = "
          f"{f['box_width']:.2f} x {f['box_height']:.2f} box sides -> {out}")
    return 0


def _cmd_make_composites(args: argparse.Namespace) -> int:
    from ..core.progress import TextProgress
    from .photo_bench import make_composites

    done = make_composites(args.data_dir, args.out, count=args.count, holdout=args.holdout,
                           split_seed=args.split_seed, seed=args.seed, progress=TextProgress)
    print(f"wrote {done['pictures']} composites holding {done['faces']} faces to {args.out}")
    return 0


def _cmd_bench_photo(args: argparse.Namespace) -> int:
    from ..core.checkpoint import default_model_path
    from ..core.progress import TextProgress
    from .machine import RESULTS_DIR, machine_info, shown_command, write_result
    from .photo_bench import run_photo_bench

    model = args.model or default_model_path()
    result = run_photo_bench(args.composites, args.data_dir, model, progress=TextProgress)
    result = {"name": args.name, "command": shown_command(), "model": Path(model).name,
              "machine": machine_info(), **result}
    out = write_result(result, RESULTS_DIR, args.name)
    for finder, r in ((f"{f}, {v}", r) for f, by_view in result["finders"].items() for v, r in by_view.items()):
        print(f"{finder:28s} found {r['found_upright']:.1%} upright, {r['found_turned']:.1%} turned; "
              f"{r['false_finds']} false finds; {r['seconds_per_picture']:.2f} s a picture")
    for key in ("photo_upright", "photo_turned"):
        if key in result:
            r = result[key]
            print(f"{key}: err {r['err']:.2f} on {r['faces']} found faces, as course crops {r['err_as_course_crops']:.2f} "
                  f"({r['ratio']:.2f}x)")
    print(f"12 megapixels, 1 thread: {result['twelve_megapixels']['seconds']:.2f} s -> {out}")
    return 0


def add_photo_commands(sub, default_data: Path) -> None:
    """Register ``facepoints photo``, ``measure-framing``, ``make-composites`` and ``bench-photo``."""
    p = sub.add_parser("photo", help="find every face in photos and its 14 points (needs the photos extra)",
                       description="Find the faces in a photo (or every picture of a folder), cut each as the "
                                   "course cuts its crops, and find its 14 points. One CSV row per face: "
                                   + ",".join(PHOTO_HEADER[:7]) + ", then x1,y1,...,x14,y14 in the photo's "
                                   "pixels (as a viewer shows the photo: EXIF orientation applied).")
    p.add_argument("pictures", help="a picture or a folder of pictures")
    p.add_argument("--out", required=True, help="CSV file to write (- for stdout)")
    p.add_argument("--draw", default=None, metavar="DIR", help="also write each photo with boxes, points and skeleton")
    p.add_argument("--model", default=None, help="model file (default: the shipped facepoints_model.pt)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=_cmd_photo)

    p = sub.add_parser("measure-framing", help="measure how the course crops frame a face (for `photo`)")
    p.add_argument("data_dir", nargs="?", default=str(default_data), help=f"train folder (default {default_data})")
    p.add_argument("--faces", type=int, default=1000, help="training faces to measure (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--name", default="course-framing", help="result name (default course-framing)")
    p.set_defaults(func=_cmd_measure_framing)

    p = sub.add_parser("make-composites", help="paste holdout faces into larger pictures (for bench-photo)")
    p.add_argument("data_dir", help="a course train folder (gt.csv + images/)")
    p.add_argument("out", help="output folder (gets images/ and faces.json)")
    p.add_argument("--count", type=int, default=200, help="pictures to write (default 200)")
    p.add_argument("--holdout", type=int, default=500, help="faces of the benchmark holdout (default 500)")
    p.add_argument("--split-seed", type=int, default=0, help="the holdout's split seed (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the composites (default 0)")
    p.set_defaults(func=_cmd_make_composites)

    p = sub.add_parser("bench-photo", help="face finders and facepoints photo on composites -> bench/results")
    p.add_argument("composites", help="a make-composites folder")
    p.add_argument("data_dir", help="the course train folder the composites came from")
    p.add_argument("--model", default=None, help="model file (default: the shipped facepoints_model.pt)")
    p.add_argument("--name", default="photo", help="result name (default photo)")
    p.set_defaults(func=_cmd_bench_photo)
