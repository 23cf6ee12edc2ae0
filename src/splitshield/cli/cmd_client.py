"""splitshield client EXPORT --server URL IMAGES...: encode on the device, send only features, print results."""
from __future__ import annotations

import argparse


def _client(args: argparse.Namespace) -> int:
    import logging

    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request buries the results
    from splitshield.deploy.auth import load_token
    from splitshield.deploy.client import run_client

    results = run_client(args.export, args.server, args.images, token=load_token(args.token_file),
                         noise=not args.no_noise, seed=args.noise_seed, dtype=args.dtype)
    for r in results:
        print(f"{r.path}\t{r.label}\tp={r.probability:.3f}\t{r.latency_ms:.1f} ms\t{r.bytes_sent} B sent")
    mean_ms = sum(r.latency_ms for r in results) / len(results)
    mean_b = sum(r.bytes_sent for r in results) / len(results)
    print(f"{len(results)} images: mean latency {mean_ms:.1f} ms, {mean_b:.0f} bytes sent per image")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run the exported edge encoder and query a 'splitshield serve' server")
    p.add_argument("export", help="run directory (uses RUN_DIR/export), export folder, manifest or model file")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token-file", help="file holding the bearer token (default: $SPLITSHIELD_TOKEN)")
    p.add_argument("--no-noise", action="store_true",
                   help="do NOT add the trained device noise (unprotected features; warns)")
    p.add_argument("--noise-seed", type=int, help="fixed noise seed, for tests only (predictable noise)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="wire dtype (float16 halves the bytes sent)")
    p.set_defaults(handler=_client)
