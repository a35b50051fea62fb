from .adaptive_controller import AdaptiveController
from .fraction_active_meter import FractionActiveMeter
from .control_rule import ControlRule
from .least_squares_rule import LeastSquaresRule
from .proportional_rule import ProportionalRule
from .linear_schedule import LinearSchedule
