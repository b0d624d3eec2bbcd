require "include";
include "loopb";
