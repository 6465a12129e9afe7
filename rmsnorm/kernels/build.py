"""Build (or find in the cache) the fused kernels ahead of first use: python -m rmsnorm.kernels.build"""

import argparse
import time

from rmsnorm.kernels import cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args()
    start = time.perf_counter()
    module = cpu.load(verbose=args.verbose)
    where = cpu.build_dir()
    if module is None:
        raise SystemExit("the fused CPU kernel did not build; the reference implementation will be used")
    print(f"fused CPU kernel ready in {time.perf_counter() - start:.1f}s ({where})")


if __name__ == "__main__":
    main()
