"""``python -m frameexit.synthetic``: see :func:`frameexit.synthetic.cli.main`."""

from frameexit.synthetic.cli import main

main()
