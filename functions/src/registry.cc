#include "lifl/functions/sdk.h"

namespace lifl::fn {

FunctionRegistry& FunctionRegistry::global() {
  static FunctionRegistry registry;
  return registry;
}

void FunctionRegistry::add(const std::string& name, FunctionFactory factory) {
  factories_[name] = std::move(factory);
}

std::unique_ptr<Function> FunctionRegistry::make(const std::string& name) const {
  auto it = factories_.find(name);
  return it == factories_.end() ? nullptr : it->second();
}

}  // namespace lifl::fn
