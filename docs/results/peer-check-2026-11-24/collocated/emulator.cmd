kvprobe emulate --model emu --port 0 --mode collocated
