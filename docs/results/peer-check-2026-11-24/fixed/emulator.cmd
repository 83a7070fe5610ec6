kvprobe emulate --model emu --port 0 --mode fixed --ttft-ms 150 --tpot-ms 15
