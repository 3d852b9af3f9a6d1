"""Parameter descriptors with ranges, shared by every node (rclpy's helpers add no ranges)."""

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter


def float_param(description, low, high, read_only=False):
    """Describe a double parameter limited to [low, high]."""
    return ParameterDescriptor(description=description, read_only=read_only,
                               floating_point_range=[FloatingPointRange(
                                   from_value=float(low), to_value=float(high))])


def int_param(description, low, high, read_only=False):
    """Describe an integer parameter limited to [low, high]."""
    return ParameterDescriptor(description=description, read_only=read_only,
                               integer_range=[IntegerRange(from_value=int(low),
                                                           to_value=int(high), step=1)])


def declare_checked(node, parameters, validate):
    """
    Declare {name: (default, description, descriptor extras)} and return their values.

    An unset string array reads as an empty list. A value `validate(name, value)` finds a
    reason against raises ValueError with that reason.
    """
    for name, (default, description, extras) in parameters.items():
        node.declare_parameter(name, default,
                               ParameterDescriptor(description=description, **extras))
    values = {}
    for name, (default, _, _) in parameters.items():
        value = node.get_parameter_or(name, Parameter(name, value=None)).value
        values[name] = [] if value is None and default is Parameter.Type.STRING_ARRAY else value
    for name, value in values.items():
        reason = validate(name, value)
        if reason:
            raise ValueError(reason)
    return values
