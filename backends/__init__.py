"""One module per framework (torch, tensorflow, jax, mxnet), installed as ``resnet.backends``.

Importing this package imports no framework; importing one of its modules imports only that framework.
"""
