"""Parameter descriptors with ranges, shared by every node (rclpy's helpers add no ranges)."""

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


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
