from postfleet.delivery.main import main

main()
