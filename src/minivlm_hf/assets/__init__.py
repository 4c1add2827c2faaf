"""Files bundled with the package."""

from pathlib import Path

ASSETS_DIR = Path(__file__).parent
EXAMPLE_IMAGE = ASSETS_DIR / "example.png"  # a synthetic test scene (seed 7): green star, red heart, crosses
