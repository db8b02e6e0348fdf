"""``python -m recipes fit --config configs/<suite>/<task>.yaml``."""

from recipes.cli import main

if __name__ == "__main__":
    main()
