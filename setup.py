"""The one C extension, a reader of baseline JPEGs at 1/8 scale (model/serving/jpegdc.c, for phone photos).

Everything else about the package is in pyproject.toml. The extension is optional: where no C compiler
is found at install time, Pillow decodes every JPEG, to the same pixels, at about twice the cost.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("model.serving._jpegdc", ["model/serving/jpegdc.c"], optional=True,
                             extra_compile_args=["-O2"])])
