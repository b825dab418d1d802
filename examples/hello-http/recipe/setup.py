from setuptools import setup

setup(
    name='hellorecipe',
    version='1.0',
    py_modules=['hellorecipe'],
    entry_points={'zc.buildout': [
        'template = hellorecipe:Template',
        'mkdirs = hellorecipe:MkDirs',
        'slapconfiguration = hellorecipe:SlapConfiguration',
        'publish = hellorecipe:Publish',
    ]},
)
