"""Decoding and hashing of images, video and audio, shared by screening and the command line.

`types` holds the values the rest of avgate sees; decoding runs in a worker
process with CPU, memory and time limits.
"""
