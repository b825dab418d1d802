# The one recipe of the binary cache benchmark's release: runs a shell
# command at install time (no download: a buildout "develop" egg).
from setuptools import setup

setup(
    name='benchrecipe',
    version='0.1',
    py_modules=['benchrecipe'],
    entry_points={'zc.buildout': ['run = benchrecipe:Run']},
)
