from tests.agents.test_foundry import *  # noqa
