"""Message classes from type names ('sensor_msgs/msg/Image'), through rclpy's rosidl modules."""

import importlib

from followme_common.bags.storage import normalise_type_name


class UnknownTypeError(LookupError):
    """A message type whose Python module is not installed here; the message says why."""


def message_class(type_name: str):
    """Return the generated Python class of a message type; UnknownTypeError says why not."""
    try:
        package, _, name = normalise_type_name(type_name).split('/')
    except ValueError as err:
        raise UnknownTypeError(str(err)) from None
    try:
        module = importlib.import_module(f'{package}.msg')
    except ImportError:
        raise UnknownTypeError(
            f"the Python messages of package '{package}' are not installed (no module "
            f'{package}.msg); install or source the package that builds {type_name}') from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not hasattr(cls, '_TYPE_SUPPORT'):
        raise UnknownTypeError(f"package '{package}' has no message '{name}' here (a newer or "
                               'older version of the package?)')
    return cls
