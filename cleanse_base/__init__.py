"""The bottom layer of Cleanse: errors, exit codes, limits, text and file utilities.

Every other package (converters, scanner, fixtures, benchmarks) may import from here; nothing here imports
from them.
"""
