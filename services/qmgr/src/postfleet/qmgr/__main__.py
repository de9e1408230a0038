from postfleet.qmgr.main import main

main()
