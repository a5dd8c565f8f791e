"""`python -m cluster.cli ...`"""

from cluster.cli import app

if __name__ == "__main__":
    app()
