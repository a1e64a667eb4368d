#!/bin/sh
# The one-shot job of docker-compose's `models` service: writes the demo servables into the mounted
# serving_models/ unless they are there, then gives each version the batching settings of its model.
#
# TF Serving reads a version's batching_params.pbtxt when it loads the version
# (--enable_per_model_batching_parameters), so each deploy/batching/<servable>.pbtxt is copied into
# every version folder of <servable> that has none; a file already there is the model author's and
# is kept. Servables without a file here are not batched (deploy/batching_parameters.txt says why).
set -eu

models_root="${GATEWAY_MODELS_ROOT:-/app/serving_models}"
batching_dir="${BATCHING_PARAMS_DIR:-/config/batching}"

flask --app app export-models --if-missing

for params in "$batching_dir"/*.pbtxt; do
  [ -f "$params" ] || continue
  servable="$(basename "$params" .pbtxt)"
  for version in "$models_root/$servable"/*/; do
    case "$(basename "$version")" in
      *[!0-9]* | "") continue ;; # only <servable>/<number>/ is a version
    esac
    if [ ! -e "${version}batching_params.pbtxt" ]; then
      cp "$params" "${version}batching_params.pbtxt"
      echo "$servable/$(basename "$version"): batching_params.pbtxt added"
    fi
  done
done

# This job runs as root so that it can write into a folder Docker may have created as root; hand
# what it wrote back to whoever owns the folder (the user who cloned the repository), so that
# `make run` and `rm` keep working on the host.
if [ "$(id -u)" = 0 ]; then
  chown -R "$(stat -c '%u:%g' "$models_root")" "$models_root"
fi
