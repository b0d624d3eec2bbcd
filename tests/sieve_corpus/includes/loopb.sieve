require "include";
include "loopa";
