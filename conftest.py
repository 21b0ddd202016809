"""`pytest --reverse` runs the tests in the reverse of their order: every test
must pass alone and in any order, and .ci/run checks one other order this way."""


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true", help="run the tests in reverse order")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
